"""The study of `perpo.studies.seeds` (`--help` says what it does); also `python -m perpo.studies.seeds`."""

from perpo.studies.seeds import main

if __name__ == "__main__":
    main()
