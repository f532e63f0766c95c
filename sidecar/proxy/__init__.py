"""The sidecar as Atlantis's front door: a transparent streaming proxy, plus Atlantis's lock routes.

Everything the sidecar does not own is passed to Atlantis byte for byte (`stream`, `websocket`);
Atlantis's lock routes are split by key between Atlantis and the engine (`lock_routes`), with ids
decoded exactly as Atlantis decodes them (`atlantis_ids`) and answers in Atlantis's own shapes
(`atlantis_json`, `lock_page`).
"""
