use actor_orm::Model;

#[derive(Model)]
#[orm(table_name = "people", index(unique = true))]
struct Person {
    #[orm(primary_key)]
    id: i64,
    name: String,
}

fn main() {}
