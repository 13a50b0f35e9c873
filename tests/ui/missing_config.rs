convnextv2::convnextv2!(name = Atto);

fn main() {}
