"""The daemon on the network: the server process, the isolated model worker and its proxy, TLS, mDNS advertising, and the no-network guard."""
