//! The libvirt qemu hook (`vmlease hook qemu NAME OP SUBOP EXTRA`).
