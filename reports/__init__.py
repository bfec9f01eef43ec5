"""Reports: read the JSON-lines records the suite writes (and nothing else) and render them."""
