use actor_orm::Model;

#[derive(Model, Clone)]
struct User {
    #[orm(primary_key, auto_incremnt)]
    id: i64,
}

fn main() {}
