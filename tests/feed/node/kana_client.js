// A feed client written the way the Kana integration page shows it: open a socket, send one
// subscription per topic on open, print every message. Only the URL and address come from
// the command line; the npm "ws" package provides the WebSocket class outside a browser.
// Usage: node kana_client.js URL PROFILE_ADDRESS COUNT
const WebSocket = require('ws');

const [url, address, count] = process.argv.slice(2);
const wanted = Number(count || 4);
let seen = 0;

const socket = new WebSocket(url);

socket.onopen = function () {
  socket.send(JSON.stringify({ topic: 'order_history', address: address }));
  socket.send(JSON.stringify({ topic: 'trade_history', address: address }));
};

socket.onmessage = function (event) {
  process.stdout.write(event.data + '\n');
  seen += 1;
  if (seen >= wanted) {
    socket.close();
  }
};

socket.onerror = function (error) {
  process.stderr.write('WebSocket Error: ' + error.message + '\n');
  process.exit(2);
};

socket.onclose = function () {
  process.exit(0);
};
