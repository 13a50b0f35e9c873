convnextv2::convnextv2!(config = "atto-1k-224", weights = "no/such/model.safetensors");

fn main() {}
