fn main() {
    print!("{}", crane_operator::api::crd_yaml());
}
