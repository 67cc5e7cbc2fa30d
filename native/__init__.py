"""native/: the C sources of libqrt (README: Architecture). Installed as the package qconv.native so that an
installed qconv still has them: `qconv bundle` builds qrun-native for a board from this folder."""
