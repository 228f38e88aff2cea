"""The SSH transport: the only package that imports asyncssh."""

import warnings

# asyncssh still names the DSA key classes, and cryptography >= 48 warns about DSA
# on every start (hpcbatch never offers or accepts DSA keys): keep that off users'
# terminals.
warnings.filterwarnings("ignore", message="DSA is deprecated", module=r"asyncssh\.")
