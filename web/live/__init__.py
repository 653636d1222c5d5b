"""The live feed of a web process: one hub, its channel-layer inbox, the pages and what their sockets carry."""
