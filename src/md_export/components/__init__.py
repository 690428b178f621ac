"""The exported components: wrappers with stable IO names, the export plan with static shapes
and example inputs."""
