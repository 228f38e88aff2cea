"""The SSH transport: the only package that imports asyncssh."""
