#[actor_orm::test]
fn not_async(pool: actor_orm::Pool) {
    drop(pool);
}

fn main() {}
