"""`python -m spectrosynth.cli ...`, the same as `spectrosynth ...`."""

from spectrosynth.cli import main

if __name__ == "__main__":
    main()
