//! `quiet_candle_pool` sets candle's worker spin limit to 0 unless the environment chose one. Its
//! own test binary with a single test: it changes the process's environment.

const SPIN: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";

#[test]
fn the_spin_limit_is_set_unless_the_environment_chose_one() {
    // SAFETY (all three): the only test in this binary, so no other thread reads or writes the
    // environment meanwhile.
    unsafe { std::env::remove_var(SPIN) };
    unsafe { retrain_inception::quiet_candle_pool() };
    assert_eq!(std::env::var(SPIN).as_deref(), Ok("0"));

    unsafe { std::env::set_var(SPIN, "5000") };
    unsafe { retrain_inception::quiet_candle_pool() };
    assert_eq!(
        std::env::var(SPIN).as_deref(),
        Ok("5000"),
        "a user's choice stays"
    );
}
