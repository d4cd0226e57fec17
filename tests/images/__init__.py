"""Slow checks of the images (disk image boots under qemu): run by ./justw image-test."""
