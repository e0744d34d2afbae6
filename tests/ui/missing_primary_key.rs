use actor_orm::Model;

#[derive(Model, Clone)]
#[orm(table_name = "users")]
struct User {
    id: i64,
    name: String,
}

fn main() {}
