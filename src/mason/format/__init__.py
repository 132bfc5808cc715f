"""The pickle format: the opcode table, the decoder and the symbolic machine."""
