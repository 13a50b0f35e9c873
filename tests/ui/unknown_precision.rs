convnextv2::convnextv2!(config = "atto-1k-224", precision = "int4");

fn main() {}
