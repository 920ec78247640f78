"""The study of `perpo.studies.study_n` (`--help` says what it does); also `python -m perpo.studies.study_n`."""

from perpo.studies.study_n import main

if __name__ == "__main__":
    main()
