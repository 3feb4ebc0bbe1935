"""Readers and writers shared by several stages (images, labels, the ICG-CXR layout)."""
