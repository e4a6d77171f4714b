"""`python -m noiseshift`: the command line, so that `torchrun --nproc-per-node N -m
noiseshift COMMAND ...` runs any command (see `noiseshift.cli.main`)."""

from noiseshift.cli import main

if __name__ == "__main__":
    main()
