"""Tools over the library: inspect, sensitivity reports, environment."""
