convnextv2::convnextv2!(config = "atto-1k-224", fuse = "no");

fn main() {}
