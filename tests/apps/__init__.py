"""Apps the tests run through ``flows run`` (as ``tests.apps.<module>:app``)."""
