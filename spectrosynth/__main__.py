"""`python -m spectrosynth ...`, the same as `spectrosynth ...` (and what torchrun runs: `torchrun
--nproc_per_node N -m spectrosynth train ...`)."""

from spectrosynth.cli import main

if __name__ == "__main__":
    main()
