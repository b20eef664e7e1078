"""The Personalize Events emulator, by part: quota models (:mod:`.quota`) and schema rules (:mod:`.schema`).

The wire server, the dataset state and the command line are in :mod:`localcloud.personalize_emulator`, which
re-exports everything tests, the bench and the demo import.
"""
