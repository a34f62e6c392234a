"""One router per resource; `api.main._ROUTERS` mounts them."""
