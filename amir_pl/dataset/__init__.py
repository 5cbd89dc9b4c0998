"""The dataset: the HDF5 schema amir-pl/1 (reader, writer), amir-prepare's recordings -> file, and
amir-synth's built-in recordings."""
