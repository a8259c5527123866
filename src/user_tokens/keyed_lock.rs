//! One async mutex per key, created on demand and dropped when unused: the
//! in-process half of "one refresh per user at a time".

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, Weak};

pub struct KeyedLocks<K> {
    locks: Mutex<HashMap<K, Weak<tokio::sync::Mutex<()>>>>,
}

impl<K> std::fmt::Debug for KeyedLocks<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedLocks").finish_non_exhaustive()
    }
}

impl<K: Eq + Hash + Clone> Default for KeyedLocks<K> {
    fn default() -> Self {
        Self {
            locks: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash + Clone> KeyedLocks<K> {
    /// The mutex of `key`; every caller holding the returned `Arc` shares it.
    pub fn get(&self, key: &K) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().expect("keyed locks poisoned");
        if let Some(lock) = locks.get(key).and_then(Weak::upgrade) {
            return lock;
        }
        if locks.len() >= 1024 {
            locks.retain(|_, weak| weak.strong_count() > 0);
        }
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        locks.insert(key.clone(), Arc::downgrade(&lock));
        lock
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn same_key_same_lock_other_key_other_lock() {
        let locks = KeyedLocks::<String>::default();
        let a1 = locks.get(&"a".to_string());
        let a2 = locks.get(&"a".to_string());
        let b = locks.get(&"b".to_string());
        assert!(Arc::ptr_eq(&a1, &a2));
        assert!(!Arc::ptr_eq(&a1, &b));
        let _held = a1.lock().await;
        assert!(a2.try_lock().is_err());
        assert!(b.try_lock().is_ok());
    }

    #[test]
    fn unused_locks_are_forgotten() {
        let locks = KeyedLocks::<u32>::default();
        for i in 0..3000 {
            drop(locks.get(&i));
        }
        assert!(locks.locks.lock().unwrap().len() <= 1024);
    }
}
