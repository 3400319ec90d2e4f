"""As the published resampler.py of this version: List is used without being imported. torch
before 2.7 left typing's List in builtins; on later torch importing the model's code fails with
NameError unless the loader puts it there (minicpmv_ft/versions/load_fixes.py: list_builtin)."""
List = List  # noqa: F821
