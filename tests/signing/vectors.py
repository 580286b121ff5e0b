"""Known answers shared by the signing tests.

``APTOS_*`` come from outside this project, so they check the scheme rather than our own
earlier output: the Ed25519 vector of the Aptos TypeScript SDK's unit-test helper
(aptos-labs/aptos-ts-sdk ``tests/unit/helper.ts``), whose address is the single-key derivation,
and the named-object address of its ``createObjectAddress`` test (a testnet object).
"""

from __future__ import annotations

APTOS_PRIVATE_KEY = "0xc5338cd251c22daa8c9c9cc94f498cc8a5c7e1d2e75287a5dda91096fe64efa5"
APTOS_PUBLIC_KEY = "0xde19e5d1880cac87d57484ce9ed2e84cf0f9599f12e7cc3a52e4e7657a763f2c"
APTOS_ADDRESS = "0x978c213990c4833df71548df7ce49d54c759d6b6d932de22b24d56060b7af2aa"
APTOS_MESSAGE = bytes.fromhex("7777")
APTOS_SIGNATURE = (
    "0xc5de9e40ac00b371cd83b1c197fa5b665b7449b33cd3cdd305bb78222e06a671"
    "a49625ab9aea8a039d4bb70e275768084d62b094bc1b31964f2357b7c1af7e0d"
)

APTOS_OBJECT_CREATOR = "0x120e79e45d21ef439963580c77a023e2729db799e96e61f878fac98fde5b9cc9"
APTOS_OBJECT_SEED = b"migration::migration_contract"
APTOS_OBJECT_ADDRESS = "0xbe376272a5c4361ee96bc147525b26b3bf2ee25f433cbd410a7b3b4b881ffcbf"

# Ours: must never change, or every account moves.
APTOS_KEY_PROFILE = "0x4ec3d0f8139a13a5ae6281447d24d93132caa2e90649834c63efa005bbd16e0e"

# The worked example of docs/signing.md.
DOC_TIMESTAMP = 1700000000000
DOC_BODY = b'{"marketId":1338}'
DOC_TEXT = (
    "1700000000000\nPOST\n/placeLimitOrder\n"
    "4bc000aa031cc5b3a87bb39fee571c2a87dbcf0fe36243ff27b8cfc2684fa023"
)
DOC_SIGNATURE = (
    "0xb3bf389f670d79b38ec6b6e1d7685e9205d76dc703ef1aff8e5e020f91bd3e0b"
    "9133f2bac2bbb80efd31cd8d88f3317d04c8df8b97476c878547b9cb62656d04"
)
