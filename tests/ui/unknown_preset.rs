convnextv2::convnextv2!(config = "tiny-1k-22");

fn main() {}
