"""Launching on a node: plan its processes, run and stop them (`mtgrpo launch`), check the machine
(`mtgrpo doctor`), resume from checkpoints and save on SIGTERM."""
