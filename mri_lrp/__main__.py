"""`python -m mri_lrp` is `mri-lrp` (cluster job scripts often call the interpreter of a known environment)."""

from mri_lrp.launch import main

if __name__ == "__main__":
    main()
