"""Measurement before and after training: recall and its forms, locality, crossed wires, interference."""
