"""unggah's own upload client: `unggah push` / `unggah status` and the Python API under them.

Standard tus 1.0 on the wire (so it also works against other tus servers), plus
what no stock tus client does: Retry-After, a retry budget, resumption across
process restarts, whole-file sha256, status polling and signed receipts.
See docs/client.md.
"""
