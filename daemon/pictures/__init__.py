"""Pure picture functions with no daemon state: auto-enhance, the copyright check's hashes, safe decoding of uploads, contact sheets. The engine and the tools both use them."""
