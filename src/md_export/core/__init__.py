"""The bottom layer: what every other package shares and nothing of md-export's own below it —
errors, file and JSON helpers, the names of targets and components, tensor specs, the bundle
manifest, metrics and progress."""
