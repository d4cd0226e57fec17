"""The control socket and the edgegw command line that talks to it."""
