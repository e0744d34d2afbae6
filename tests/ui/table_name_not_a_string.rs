use actor_orm::Model;

#[derive(Model, Clone)]
#[orm(table_name = users)]
struct User {
    #[orm(primary_key)]
    id: i64,
}

fn main() {}
