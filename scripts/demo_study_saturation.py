"""The study of `perpo.studies.saturation` (`--help` says what it does); also `python -m perpo.studies.saturation`."""

from perpo.studies.saturation import main

if __name__ == "__main__":
    main()
