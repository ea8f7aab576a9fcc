"""MongoDB storage, one module per collection family. Connections are passed in, never global."""
