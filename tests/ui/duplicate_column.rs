use actor_orm::Model;

#[derive(Model, Clone)]
struct User {
    #[orm(primary_key)]
    id: i64,
    name: String,
    #[orm(column_name = "name")]
    display_name: String,
}

fn main() {}
