use actor_orm::Model;

#[derive(Model, Clone)]
struct User {
    #[orm(primary_key)]
    id: i64,
    visits: u64,
}

fn main() {}
