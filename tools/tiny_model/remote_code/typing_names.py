"""The typing names the model code's annotations use. The published 2.0, 4.0 and 4.5 resampler.py
import List; the 2.5 and 2.6 ones use it without importing it (v2_5/ and v2_6/ replace this file
to do the same)."""
from typing import List  # noqa: F401
