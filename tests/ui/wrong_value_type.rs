use actor_orm::Model;

#[derive(Model, Clone)]
struct User {
    #[orm(primary_key)]
    id: i64,
    age: i32,
}

fn main() {
    let _ = User::query().filter(User::AGE.eq("thirty"));
}
