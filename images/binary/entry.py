"""The single binary's entry point: the `edgegw` console script (gateway.control.cli:main).

PyInstaller runs a script, not an entry point, so this is that script; it does nothing
the console script does not.
"""

from gateway.control.cli import main

if __name__ == "__main__":
    main()
