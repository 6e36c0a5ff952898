"""One blueprint module per API dialect: native, OpenAI, AUTOMATIC1111, picture tools, pairing, no-network status, the web page."""
