"""Images: layer media types, applying layers to snapshots, unpacking."""
